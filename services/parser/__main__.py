from services.parser.service import main

main()
