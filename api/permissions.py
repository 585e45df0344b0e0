"""Who reaches what. Annotators (session or token) reach the annotation endpoints for their own work;
reviewers read the data of the batches they review; staff read everything; imports and exports need
staff or the explicit ``annotation.import_data`` / ``annotation.export_preferences`` permission."""

from rest_framework.permissions import BasePermission

from annotation.models import AnnotationBatch


def is_reviewer(user) -> bool:
    return user.is_authenticated and (user.is_staff or AnnotationBatch.objects.filter(reviewers=user).exists())


class IsReviewerOrStaff(BasePermission):
    message = "Only reviewers and staff can read annotation data."

    def has_permission(self, request, view):
        return is_reviewer(request.user)


class CanImport(BasePermission):
    message = "Importing needs staff or the 'Can import prompts and preference data' permission."

    def has_permission(self, request, view):
        user = request.user
        return user.is_authenticated and (user.is_staff or user.has_perm("annotation.import_data"))


class CanExport(BasePermission):
    message = "Exporting needs staff or the 'Can export preference datasets' permission."

    def has_permission(self, request, view):
        user = request.user
        return user.is_authenticated and (user.is_staff or user.has_perm("annotation.export_preferences"))


class CanScore(BasePermission):
    message = "Scoring needs staff or the 'Can score responses with reward models' permission."

    def has_permission(self, request, view):
        user = request.user
        return user.is_authenticated and (user.is_staff or user.has_perm("rlhf.can_score"))


class IsStaff(BasePermission):
    message = "Only staff start, cancel, retry or promote RLHF rounds."

    def has_permission(self, request, view):
        return bool(request.user.is_authenticated and request.user.is_staff)
