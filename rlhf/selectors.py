from rlhf.models import PolicyCheckpoint


def current_policy() -> PolicyCheckpoint | None:
    return PolicyCheckpoint.objects.filter(role=PolicyCheckpoint.Role.POLICY, is_current=True).first()
