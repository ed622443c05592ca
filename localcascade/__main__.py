from localcascade.cli import main

main()
