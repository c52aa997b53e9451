print("demo: TODO")
