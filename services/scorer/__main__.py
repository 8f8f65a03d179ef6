from services.scorer.service import main

main()
