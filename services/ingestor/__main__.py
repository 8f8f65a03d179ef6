from services.ingestor.service import main

main()
