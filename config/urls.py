from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

admin.site.site_header = "Ladder administration"
admin.site.site_title = "Ladder administration"
admin.site.index_title = "Batches, labels, checkpoints"
# The navigation sidebar takes 300 px of a 1280 px screen from the list pages; the breadcrumbs and the index
# reach every model.
admin.site.enable_nav_sidebar = False

handler500 = "config.unavailable.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include("api.urls")),
    path("", include("frontend.urls")),
]
