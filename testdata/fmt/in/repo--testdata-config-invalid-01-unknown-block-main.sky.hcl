infra "local" {}

# "clustr" is a typo for "cluster".
clustr "dev" {
  num_nodes = 1
  resources {
    cpus = "4+"
  }
}
