cluster "dev" {
  num_nodes = 1
  setup     = "pip install -r requirements.txt"
  resources {
    cpus = "4+"
  }
  num_nodes = 2
}
