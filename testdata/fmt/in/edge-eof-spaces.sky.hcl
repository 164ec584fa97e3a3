locals {
a=1
}
   