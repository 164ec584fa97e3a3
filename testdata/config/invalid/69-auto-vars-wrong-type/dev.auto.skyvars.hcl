epochs = "ten"
