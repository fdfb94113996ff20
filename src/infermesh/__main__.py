from infermesh.cli import main

main()
