from invdiff.cli import main

main()
