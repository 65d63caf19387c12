// SPDX-License-Identifier: GPL-2.0
/* TEST IMAGES ONLY (enmei, issue 17): a module that does nothing, loaded and unloaded over and over by
 * the modchurn specimen: benign module churn that the cross-view check must never accuse. */
#include <linux/module.h>

static int __init cv_benign_init(void)
{
	return 0;
}

static void __exit cv_benign_exit(void)
{
}

module_init(cv_benign_init);
module_exit(cv_benign_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("enmei test specimen: benign module churn");
