service "web" {
  run      = "python3 -m http.server $PORT"
  replicas = 0
}
