job "train" {
  cluster = cluster.train
  setup   = <<-EOT
      pip install -r requirements.txt   
	tabbed line
      echo ${var.gpus}  ${upper("x")}
    EOT
  run     = <<EOF2
python train.py \
  --lr ${local.lr}
EOF2
  envs = {
    A           = "1"
    LONGER_NAME = <<-X
      text
      X
    B           = "2"
  }
}

/* a block
   comment */
output "x" {
  value       = job.train.id /* inline */
  description = "d" # trailing
}
