infra "local" {}

cluster "dev" {
  num_node = 2
  workdir  = "."
  resources {
    cpus = "4+"
  }
}
