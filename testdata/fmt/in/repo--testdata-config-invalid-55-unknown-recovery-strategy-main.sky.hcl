managed_job "finetune" {
  resources {
    use_spot     = true
    accelerators = "A100:8"
  }
  run = "python finetune.py"
  recovery {
    strategy               = "eager-next-region"
    max_restarts_on_errors = 3
  }
}
