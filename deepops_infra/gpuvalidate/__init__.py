"""GPU validation: proves a machine delivers what was ordered and what its datasheet promises.

probe.py runs on the machine (stdlib and torch only), specs.py is the per-model specification
table it judges against, runner.py ships both to a machine and reads the JSON result back.
"""
