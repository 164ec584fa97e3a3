# Services: the plan shows each one's replica range and its hourly cost with the fewest and
# the most replicas running; a spot service splits its replicas between spot and on demand.
service "web" {
  run = "python3 -m http.server $PORT"
  resources {
    ports = [8000]
  }
  readiness_probe = "/health"
  replica_policy {
    min_replicas           = 1
    max_replicas           = 4
    target_qps_per_replica = 10
  }
}

service "llm" {
  run = "vllm serve meta-llama/Llama-3.1-8B --port $PORT"
  resources {
    accelerators = "A100:8"
    use_spot     = true
    ports        = [8001]
  }
  load_balancing_policy = "round_robin"
  update_mode           = "blue_green"
  readiness_probe {
    path                  = "/v1/models"
    initial_delay_seconds = 600
  }
  replica_policy {
    min_replicas                    = 2
    max_replicas                    = 6
    target_qps_per_replica          = 2.5
    num_overprovision               = 1
    base_ondemand_fallback_replicas = 1
    dynamic_ondemand_fallback       = true
  }
}
