variable "gpus" {
type = number
    default=8
  description =   "how many"
}
variable "tags" {
  type = map
}
variable "legacy" { type = "string" }
variable "legacy_list" {
  type="list"
}

locals {
  a = 1
  bbbbbb = 2   # two
  cc=3 // three
  # a comment line breaks the run
  dddd = "x"
  e = "${var.gpus}"
  f = "${var.gpus}-x"
  g = "${upper("a${var.gpus}")}"


  h = [1,2,3]
  i = {a=1,b="two"}
  j = { "k" = 1, l: 2 }
}

cluster   "train"   {
num_nodes=2
  resources {
      accelerators = "A100:${var.gpus}"
      cpus="8+"
   }
}
