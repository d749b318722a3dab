"""Human queues: the agent desk (claim, reply, close), escalation sweeps, and the agent surfaces
(slack/, web/, email notices). Ticket model: bot.core.tickets."""
