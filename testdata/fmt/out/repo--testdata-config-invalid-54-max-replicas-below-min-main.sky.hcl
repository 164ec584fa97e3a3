service "llm" {
  resources {
    accelerators = "L4:1"
    ports        = [8000]
  }
  run = "vllm serve meta-llama/Llama-3.1-8B --port 8000"
  replica_policy {
    min_replicas = 4
    max_replicas = 2
  }
}
