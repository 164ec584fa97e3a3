managed_job "finetune" {
  resources {
    accelerators = ["H100:8", "A 100:8"]
  }
  run = "python finetune.py"
}
