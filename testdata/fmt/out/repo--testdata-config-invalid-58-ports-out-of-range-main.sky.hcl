service "api" {
  resources {
    cpus  = "2+"
    ports = [80800]
  }
  run = "python -m http.server 80800"
  replica_policy {
    min_replicas = 1
  }
}
