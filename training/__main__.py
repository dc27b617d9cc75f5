from .train_reference import main

main()
