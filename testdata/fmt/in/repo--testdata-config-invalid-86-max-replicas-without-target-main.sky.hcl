service "web" {
  run = "python3 -m http.server $PORT"
  replica_policy {
    min_replicas = 1
    max_replicas = 4
  }
}
