from test_driver import main

main()
