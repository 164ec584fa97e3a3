cluster "dev" {
  resources {
    cpus = "4+"
  }
}

job "warmup" {
  cluster = cluster.dev
  run     = 42
}
