from localcascade.cli.main import main

main()
