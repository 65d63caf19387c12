// SPDX-License-Identifier: GPL-2.0
/*
 * TEST IMAGES ONLY (enmei, issue 17): a stand-in for a kernel rootkit that hides a process. It unlinks
 * the process named by pid= from the kernel's task list (init_task.tasks, what for_each_process and
 * so ps-like tools walk), and does nothing else: the process keeps its pid (the pid tree still holds
 * it, so /proc still shows it) and runs on. Harmless: built for the test image's kernel only, loaded
 * only when the kernel command line names the specimen.
 *
 * The kernel's tasklist_lock is not exported to modules: the unlink runs with interrupts off on a
 * single-CPU guest (no writer can be inside its critical section then), and refuses to run on more
 * than one CPU. After list_del_rcu and an RCU grace period the node points at itself, so the task's
 * own exit later unlinks it again without tripping CONFIG_DEBUG_LIST.
 */
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/rculist.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>

static int pid;
module_param(pid, int, 0);
MODULE_PARM_DESC(pid, "the process to unlink from the task list");

static int __init cv_hide_task_init(void)
{
	struct task_struct *task;
	unsigned long flags;

	if (num_online_cpus() != 1)
		return -EBUSY;
	rcu_read_lock();
	task = pid_task(find_vpid(pid), PIDTYPE_PID);
	if (!task || task != task->group_leader) {
		rcu_read_unlock();
		return -ESRCH;
	}
	get_task_struct(task);
	rcu_read_unlock();
	local_irq_save(flags);
	list_del_rcu(&task->tasks);
	local_irq_restore(flags);
	synchronize_rcu();
	INIT_LIST_HEAD(&task->tasks);
	pr_info("cv_hide_task: pid %d unlinked from the task list\n", pid);
	put_task_struct(task);
	return 0;
}

static void __exit cv_hide_task_exit(void)
{
}

module_init(cv_hide_task_init);
module_exit(cv_hide_task_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("enmei test specimen: unlinks one process from the task list");
