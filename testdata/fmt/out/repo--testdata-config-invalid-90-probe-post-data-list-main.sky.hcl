service "web" {
  run = "python3 -m http.server $PORT"
  readiness_probe {
    path      = "/v1/completions"
    post_data = ["hello"]
  }
}
