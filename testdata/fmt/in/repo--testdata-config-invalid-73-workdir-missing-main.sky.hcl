cluster "dev" {
  num_nodes = 1
  workdir   = "./src"
  setup     = "pip install -r requirements.txt"
}
