from resreap.cli import main

main()
