epoch = 10
