cluster "dev" {
  num_nodes = 1
  setup     = file("scripts/setup.sh")
}
