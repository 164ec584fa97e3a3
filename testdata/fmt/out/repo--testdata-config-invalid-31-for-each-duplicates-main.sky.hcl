managed_job "sweep" {
  for_each = ["1e-4", "3e-4", "1e-4"]
  resources {
    accelerators = "A100:1"
  }
  run = "python finetune.py --lr ${each.value}"
}
