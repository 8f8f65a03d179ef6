from services.live.service import main

main()
