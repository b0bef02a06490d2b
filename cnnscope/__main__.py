from cnnscope.cli import main

main()
