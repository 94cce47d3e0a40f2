.code16
.globl _start
_start:
  cli
  xor %ax, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  mov $0x7c00, %sp
  mov $0x1000, %edi
  xor %eax, %eax
  mov $0x1000, %ecx
  rep stosl
  movl $0x2003, 0x1000
  movl $0x3003, 0x2000
  movl $0x83, 0x3000
  lgdtl gdtr
  mov %cr4, %eax
  or $0x20, %eax
  mov %eax, %cr4
  mov $0x1000, %eax
  mov %eax, %cr3
  mov $0xC0000080, %ecx
  rdmsr
  or $0x100, %eax
  wrmsr
  mov %cr0, %eax
  or $0x80000001, %eax
  mov %eax, %cr0
  ljmpl $0x08, $long_mode
.code64
long_mode:
  mov $0x10, %ax
  mov %ax, %ds
  mov $0x3f8, %dx
  mov $'L', %al
  out %al, %dx
  mov $'\n', %al
  out %al, %dx
  mov $0, %al
  out %al, $0xf4
  hlt
.align 8
gdt:
  .quad 0
  .quad 0x00209A0000000000
  .quad 0x0000920000000000
gdt_end:
gdtr:
  .word gdt_end - gdt - 1
  .long gdt
