from django.urls import path

from api import views

urlpatterns = [
    path("v1/health/", views.health, name="api-health"),
]
