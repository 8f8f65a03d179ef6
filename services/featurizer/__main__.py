from services.featurizer.service import main

main()
