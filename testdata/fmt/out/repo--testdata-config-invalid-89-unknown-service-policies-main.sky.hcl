service "web" {
  run                   = "python3 -m http.server $PORT"
  load_balancing_policy = "least_connections"
  update_mode           = "canary"
}
