# Converted from service.yaml by `skyform convert`.
variable "KEY" {
  type        = string
  description = "envs.KEY of service.yaml (null there: give it with -var KEY=… or SKYFORM_VAR_KEY)"
}

service "service" {
  envs = {
    MODEL = "meta-llama/Llama-3.1-8B"
    KEY   = var.KEY
  }

  readiness_probe {
    path                  = "/v1/models"
    initial_delay_seconds = 600
    timeout_seconds       = 10
    post_data = {
      model      = "meta-llama/Llama-3.1-8B"
      max_tokens = 1
    }
    headers = {
      Authorization = "Bearer ${var.KEY}"
    }
  }

  # service.replica_policy.spot_placer (line 20): skyform places spot replicas by price across the candidates; there is no placer to choose.
  #   spot_placer: dynamic_fallback
  replica_policy {
    min_replicas              = 1
    max_replicas              = 4
    target_qps_per_replica    = 2.5
    upscale_delay_seconds     = 60
    dynamic_ondemand_fallback = true
  }

  load_balancing_policy = "round_robin"
  # service.ports (line 22): skyform's endpoint listens on the replicas' port (the first of resources.ports); there is no separate load balancer port.
  #   ports: 8443
  # service.tls (line 23): skyform's load balancer speaks plain HTTP: put a TLS proxy in front of the endpoint.
  #   tls:
  #     keyfile: ~/key.pem
  #     certfile: ~/cert.pem
  resources {
    accelerators = toset(["L4:1", "A10G:1"])
    use_spot     = true
    ports        = [8000]
  }

  run = "vllm serve $MODEL --port 8000"
}
