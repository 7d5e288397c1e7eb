from mlxpin.cli import main

main()
