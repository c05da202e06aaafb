from deepops_infra.cli import main

main()
