from mlxpin.entry import main

main()
