service "web" {
  run             = "python3 -m http.server $PORT"
  readiness_probe = "/health"
  readiness_probe {
    path = "/health"
  }
}
