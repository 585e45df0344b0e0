from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Preference annotation"

    def ready(self) -> None:
        from annotation import signals  # noqa: F401  (connects the receivers)
