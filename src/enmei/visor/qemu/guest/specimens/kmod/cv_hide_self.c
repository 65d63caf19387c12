// SPDX-License-Identifier: GPL-2.0
/*
 * TEST IMAGES ONLY (enmei, issue 17): a stand-in for a kernel rootkit that hides itself. At load it
 * unlinks its own struct module from the kernel's module list (what /proc/modules and lsmod read),
 * and does nothing else; it stays in memory (and in /sys/module) and cannot be unloaded by name.
 * Harmless: built for the test image's kernel only, loaded only when the kernel command line names
 * the specimen. module_mutex is not exported: as cv_hide_task, interrupts off on one CPU, then an RCU
 * grace period before the node points at itself.
 */
#include <linux/module.h>
#include <linux/rculist.h>

static int __init cv_hide_self_init(void)
{
	unsigned long flags;

	if (num_online_cpus() != 1)
		return -EBUSY;
	local_irq_save(flags);
	list_del_rcu(&THIS_MODULE->list);
	local_irq_restore(flags);
	synchronize_rcu();
	INIT_LIST_HEAD(&THIS_MODULE->list);
	pr_info("cv_hide_self: unlinked from the module list\n");
	return 0;
}

module_init(cv_hide_self_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("enmei test specimen: hides itself from the module list");
