from services.bridge.service import main

main()
