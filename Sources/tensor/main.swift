print("tensor")
