"""The team server: the machine lifecycle behind an HTTP API and a web page (`deepops serve`)."""
