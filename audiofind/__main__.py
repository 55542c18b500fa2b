from audiofind.cli import main

main()
